"""Files in and out: safetensors checkpoints, the streaming fold, exports, verification, the Hub, model cards."""
