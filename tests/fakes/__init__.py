"""In-process fakes of partner APIs, speaking their real wire formats."""
