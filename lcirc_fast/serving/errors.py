"""Errors a request can cause, carried to the HTTP layer as OpenAI-style error objects."""
from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, an OpenAI error `code`, a one-line message."""

    def __init__(self, status: int, code: str, message: str,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code, self.message, self.type = status, code, message, type_

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code)


def error_body(message: str, type_: str, code: str) -> dict:
    """{"error": {"message", "type", "code"}}, as the OpenAI API answers."""
    return {"error": {"message": message, "type": type_, "code": code}}
