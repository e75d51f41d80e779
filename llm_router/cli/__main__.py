"""``python -m llm_router.cli``: what the ``llm-router`` command runs."""

import sys

from llm_router.cli.main import main

sys.exit(main())
