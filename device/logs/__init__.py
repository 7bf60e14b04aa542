"""Log streams: file, journal and syslog sources, and the template miner.

Every source hands out :class:`device.logs.record.LogLine` records and takes them back
with ``ack()`` once the consumer has processed them, which is what lets a restart resume
where processing stopped instead of where reading stopped (see docs/logs.md).
"""
