"""probenet wire protocol, version 1: generated modules and stubs (`make proto`)."""
