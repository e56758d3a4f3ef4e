"""Tests of service.builtin."""
