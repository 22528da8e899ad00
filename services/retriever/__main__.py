"""python -m services.retriever: serves RetrieverService until SIGTERM."""

from services.common.server import run_service
from services.retriever.app import build_app
from services.retriever.config import RetrieverSettings


def main() -> None:
    run_service("retriever", RetrieverSettings, build_app)


if __name__ == "__main__":
    main()
