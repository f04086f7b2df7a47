"""The analyst's loop: session embeddings, similar sequences, few-shot kinds, ATT&CK context, feedback."""
