"""Benchmark implementations; the ``ehrshare bench …`` commands in :mod:`ehrshare.commands`
call them and print their JSON. Modules here measure and return data; they never print."""
