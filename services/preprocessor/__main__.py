"""python -m services.preprocessor: serves PreprocessorService until SIGTERM."""

from services.common.server import run_service
from services.preprocessor.app import build_app
from services.preprocessor.config import PreprocessorSettings


def main() -> None:
    run_service("preprocessor", PreprocessorSettings, build_app)


if __name__ == "__main__":
    main()
