"""Time and control of calls, with their shared state in the notifier's store: cancels, periodic
tasks, rate limits and paused queues, and the gate a worker asks before it runs a message."""
