"""The node: the plaintext OpenAI-compatible API over the engine, and the OHTTP gateway in front."""
