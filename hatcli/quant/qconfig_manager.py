"""HAT's ``qconfig_manager`` spelling: ``qconfig_manager.get_default_qat_qconfig()``."""

from hatcli.quant.qconfig import QConfig, get_default_qat_out_qconfig, get_default_qat_qconfig

__all__ = ["QConfig", "get_default_qat_out_qconfig", "get_default_qat_qconfig"]
