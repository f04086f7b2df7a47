"""Baselines run beside LogLM on the same prepared split: DeepLog-style LSTM, PCA and IsolationForest."""
