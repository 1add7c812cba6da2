"""alg/sip"""
