"""python -m services.gateway: serves GatewayService until SIGTERM."""

from services.common.server import run_service
from services.gateway.app import build_app
from services.gateway.config import GatewaySettings


def main() -> None:
    run_service("gateway", GatewaySettings, build_app)


if __name__ == "__main__":
    main()
