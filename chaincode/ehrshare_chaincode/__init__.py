"""The ehrshare chaincode: the on-chain half of the system (see DESIGN.md section 4)."""
