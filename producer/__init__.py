"""What enqueues and reads jobs: the async ``Producer`` and the sync ``Client``."""

from producer.client import Client
from producer.producer import JobFailed, Producer, Submitted

__all__ = ["Client", "JobFailed", "Producer", "Submitted"]
