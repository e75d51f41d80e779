"""``python -m llm_router.simulator [--host H] [--port P] [--profile FILE]``.

A stand-alone entry until the ``llm-router simulate`` CLI command wraps ``serve_forever``.
"""

from __future__ import annotations

import argparse

from llm_router.simulator.config import SimConfig
from llm_router.simulator.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_router.simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--profile", help="YAML SimConfig profile")
    args = parser.parse_args(argv)
    config = SimConfig.from_yaml(args.profile) if args.profile else SimConfig()
    serve_forever(config, args.host, args.port)


if __name__ == "__main__":
    main()
