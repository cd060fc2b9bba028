"""Publishing a run: export (merge, GGUF), the model card, the Hub push and a Space."""
