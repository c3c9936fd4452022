"""The project's topics, with kafka-python: create them (idempotent), measure the ingest lag."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from runtime.config import Config


def ensure_topics(config: Config, timeout_s: float = 30.0) -> list[str]:
    """Create the events, catalog, dead-letter, served and windows topics if missing; returns the ones created.

    The windows topic has one partition, so one worker at a time records the window notices.
    """
    wanted = {config.events_topic: config.topic_partitions, config.catalog_topic: config.topic_partitions,
              config.dead_letter_topic: config.topic_partitions, config.served_topic: config.topic_partitions,
              config.windows_topic: 1}
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers, client_id=f"{config.app_id}-admin",
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, wanted[topic], 1)])
                created.append(topic)
            except TopicAlreadyExistsError:  # another worker won the race
                pass
        return created
    finally:
        admin.close()


class LagReader:
    """Each ingest partition's end offset in Kafka minus the next offset stored with the data
    (``stored()`` returns ``{(topic, partition): next offset}``); one client, reused."""

    def __init__(self, config: Config, stored):
        self.config, self.stored = config, stored
        self._consumer: KafkaConsumer | None = None

    def read(self) -> dict[tuple[str, int], int]:
        if self._consumer is None:
            self._consumer = KafkaConsumer(bootstrap_servers=self.config.bootstrap_servers,
                                           client_id=f"{self.config.app_id}-lag", enable_auto_commit=False)
        partitions = [TopicPartition(topic, p) for topic in (self.config.events_topic, self.config.catalog_topic)
                      for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        ends = self._consumer.end_offsets(partitions)
        stored = self.stored()
        return {(tp.topic, tp.partition): max(0, end - stored.get((tp.topic, tp.partition), 0))
                for tp, end in ends.items()}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
