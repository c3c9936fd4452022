"""Create the project's topics with kafka-python's admin client (idempotent)."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamrec.config import Config


def ensure_topics(config: Config, timeout_s: float = 30.0) -> list[str]:
    """Create the events, catalog and dead-letter topics if missing; returns the ones created."""
    wanted = [config.events_topic, config.catalog_topic, config.dead_letter_topic]
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers, client_id=f"{config.app_id}-admin",
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, config.topic_partitions, 1)])
                created.append(topic)
            except TopicAlreadyExistsError:  # another worker won the race
                pass
        return created
    finally:
        admin.close()
