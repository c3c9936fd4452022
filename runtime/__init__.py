"""What every running process shares: settings, child processes, blocking work off the event loop."""
