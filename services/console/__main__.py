"""python -m services.console (or `recsys console`): serves the operator console until SIGTERM."""

import uvicorn

from services.console.app import build_app
from services.console.config import ConsoleSettings


def serve(settings: ConsoleSettings) -> None:
    # uvicorn stops on SIGTERM after finishing the requests in flight.
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")


def main() -> None:
    serve(ConsoleSettings())


if __name__ == "__main__":
    main()
