"""python -m services.embedding: serves EmbeddingService until SIGTERM."""

from services.common.server import run_service
from services.embedding.app import build_app
from services.embedding.config import EmbeddingSettings


def main() -> None:
    run_service("embedding", EmbeddingSettings, build_app)


if __name__ == "__main__":
    main()
