"""Data: formats (one registered loader per `data=` option), row-problem reports, chat rendering with
assistant-only labels, over-length policy, packing, answer checkers, and the generated quickstart task."""
