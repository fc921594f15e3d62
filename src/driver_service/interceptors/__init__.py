"""Server interceptors, one concern per module, applying to all four RPC kinds."""

from driver_service.interceptors.recovery import RecoveryInterceptor

__all__ = ["RecoveryInterceptor"]
