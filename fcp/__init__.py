"""FCP, the firewall control protocol between the ALG and the filter agent (gRPC, v1)."""
