"""HTTP routers of the v1 API. None of them imports torch or timm (tests/service check it)."""
