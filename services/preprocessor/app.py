"""Composition root of the preprocessor service."""

from __future__ import annotations

import grpc

from recsys.preprocessor.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from services.preprocessor.cleaning import TextPreprocessor
from services.preprocessor.config import PreprocessorSettings
from services.preprocessor.service import Preprocessing
from services.preprocessor.servicer import PreprocessorServicer
from services.preprocessor.tokens import HuggingFaceTokenBudget, default_model_path

SERVICE_NAME = preprocessor_pb2.DESCRIPTOR.services_by_name["PreprocessorService"].full_name


class PreprocessorApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: PreprocessorSettings, preprocessor: TextPreprocessor) -> None:
        self.preprocessing = Preprocessing(
            preprocessor,
            settings.max_texts_per_request,
            settings.workers,
            max_text_chars=settings.max_text_chars,
            max_fields_per_item=settings.max_fields_per_item,
            max_request_chars=settings.max_request_chars,
        )

    def register(self, server: grpc.aio.Server) -> None:
        servicer = PreprocessorServicer(self.preprocessing)
        preprocessor_pb2_grpc.add_PreprocessorServiceServicer_to_server(servicer, server)

    async def warm_up(self) -> None:
        await self.preprocessing.warm_up()

    async def close(self) -> None:
        await self.preprocessing.close()


def build_preprocessor(settings: PreprocessorSettings) -> TextPreprocessor:
    budget = HuggingFaceTokenBudget.from_model_path(settings.model_path or default_model_path())
    return TextPreprocessor(
        budget,
        max_tokens=settings.max_tokens,
        mask_personal_data=settings.mask_personal_data,
        phone_region=settings.phone_region,
    )


def build_app(settings: PreprocessorSettings) -> PreprocessorApp:
    return PreprocessorApp(settings, build_preprocessor(settings))
