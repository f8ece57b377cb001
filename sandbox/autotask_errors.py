"""The error the Autotask sandbox raises; the server turns it into Autotask's JSON error shapes."""

from __future__ import annotations


class ApiError(Exception):
    """An Autotask-style failure: `{"errors": [...]}` (or `{"Message": ...}` when `message_style`)."""

    def __init__(
        self,
        errors: str | list[str],
        status: int = 500,
        message_style: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.status = status
        self.message_style = message_style
        self.headers = headers or {}
        super().__init__("; ".join(self.errors))

    def body(self) -> dict:
        if self.message_style:
            return {"Message": self.errors[0]}
        return {"errors": self.errors}


def method_not_allowed(verb: str) -> ApiError:
    return ApiError(f"The requested resource does not support http method '{verb}'.", 405, message_style=True)


def not_found(path: str) -> ApiError:
    return ApiError(f"No HTTP resource was found that matches the request URI '{path}'.", 404, message_style=True)
