"""Thin asyncio adapters between lane hardware and the sans-IO core.

Each driver owns its reconnect loop and reports its health; a failing device degrades
the lane, it never takes the daemon down.
"""
