"""alg/sdp"""
