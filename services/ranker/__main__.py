"""python -m services.ranker: serves RankerService until SIGTERM."""

from services.common.server import run_service
from services.ranker.app import build_app
from services.ranker.config import RankerSettings


def main() -> None:
    run_service("ranker", RankerSettings, build_app)


if __name__ == "__main__":
    main()
