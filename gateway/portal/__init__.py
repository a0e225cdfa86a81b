"""The portal's built files (``dist/``), made from ``web/`` by ``make`` (``npm ci`` and
``npm run build``); served by ``gateway.api.portal``."""

from __future__ import annotations

from pathlib import Path

DIST = Path(__file__).resolve().parent / "dist"
