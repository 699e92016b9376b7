"""What operators see: structured logs with correlation ids, and Prometheus metrics.

`logs` sets up structlog, `context` carries the ids of the update or job being
handled, `metrics` holds every metric object, and the remaining modules attach
them to aiogram, aiohttp, the generation service and the database.
"""
