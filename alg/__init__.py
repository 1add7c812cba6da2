"""The SIP proxy ALG: a sans-I/O SIP/SDP core with one thin asyncio shell."""
