"""The arq worker that runs llm-router jobs."""
