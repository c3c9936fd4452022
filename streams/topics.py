"""Create the project's topics with kafka-python's admin client (idempotent)."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from runtime.config import Config


def ensure_topics(config: Config, timeout_s: float = 30.0) -> list[str]:
    """Create the events, catalog, dead-letter and windows topics if missing; returns the ones created.

    The windows topic has one partition, so one worker at a time takes the training triggers.
    """
    wanted = {config.events_topic: config.topic_partitions, config.catalog_topic: config.topic_partitions,
              config.dead_letter_topic: config.topic_partitions, config.windows_topic: 1}
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
