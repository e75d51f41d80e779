"""The HTTP API (`llm-router serve`): aiohttp app, auth, OpenAI/Gemini fronts, /v1/jobs, batches and files."""
