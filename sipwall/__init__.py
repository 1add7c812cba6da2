"""sipwall: a decomposed SIP firewall (SIP proxy ALG + firewall control protocol + agent)."""

__version__ = "0.1.0"
