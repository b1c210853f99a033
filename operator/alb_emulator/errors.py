"""Errors the emulator answers with, in the cloud's JSON shape (Code, Message, RequestId, HostId, Recommend)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ApiError(Exception):
    code: str
    message: str
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str, host: str) -> dict[str, str]:
        return {
            "RequestId": request_id,
            "HostId": host,
            "Code": self.code,
            "Message": self.message,
            "Recommend": f"https://api.alibabacloud.com/troubleshoot?q={self.code}&product=Alb&requestId={request_id}",
        }


# HTTP statuses by code. Gateway codes and several ALB statuses are not documented for ALB itself
# (reference/alb-api.md marks them UNCONFIRMED); the choices are listed in the README's emulator section.
STATUS = {
    "IncorrectStatus.ServerGroup": 400,
    "ResourceNotFound.ServerGroup": 404,
    "ResourceNotFound.BackendServer": 404,
    "ResourceAlreadyAssociated.BackendServer": 400,
    "SystemBusy": 400,
    "IdempotenceProcessing": 400,
    "IdempotenceSignatureMismatch": 400,
    "DryRunOperation": 400,
    "QuotaExceeded.ServersNum": 400,
    "IllegalParam.Servers": 400,
    "IllegalParam.ServerType": 400,
    "IllegalParam.Port": 400,
    "IllegalParam.ClientToken": 400,
    "IllegalParam.MaxResults": 400,
    "IllegalParam.NextToken": 400,
    "IllegalParam.JobIds": 400,
    "Mismatch.ServerType": 400,
    "DuplicatedParam.Server": 400,
    "Forbidden.NoPermission": 403,
    "Throttling.User": 400,
    "Throttling.Api": 400,
    "ServiceUnavailable": 503,
    "InternalError": 500,
    "IncompleteSignature": 400,
    "SignatureDoesNotMatch": 400,
    "InvalidAccessKeyId.NotFound": 404,
    "InvalidSecurityToken.Mismatch": 400,
    "InvalidTimeStamp.Expired": 400,
    "InvalidTimeStamp.Format": 400,
    "InvalidSecurityToken.Expired": 400,
    "IllegalParam.Weight": 400,
    "IllegalParam.BeginTime": 400,
    "IllegalParam.EndTime": 400,
    "SignatureNonceUsed": 400,
    "InvalidAction.NotFound": 404,
    "InvalidVersion": 400,
    "MissingParameter": 400,
}

MESSAGES = {
    "Throttling.User": "Request was denied due to user flow control.",
    "Throttling.Api": "Request was denied due to api flow control.",
    "SystemBusy": "System is busy, please try again later.",
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
    "InternalError": "The request processing has failed due to some unknown error.",
    "DryRunOperation": "Request validation has been passed with DryRun flag set.",
    "Forbidden.NoPermission": "You are not authorized to operate on the specified resource.",
}


def error(code: str, message: str | None = None) -> ApiError:
    return ApiError(code=code, message=message or MESSAGES.get(code, code), status=STATUS.get(code, 400))
