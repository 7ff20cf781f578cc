"""PEAR: locate the heads that suppress copying from context, learn one scalar per head, fold the scalars."""
