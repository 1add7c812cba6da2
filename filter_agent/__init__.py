"""The Linux filter agent: NAT bindings and pinholes as nftables elements, driven by FCP."""
