"""The warming side: tracker, strategies, queue, executor, scheduler.

Depends on the proxy only through the small protocols in :mod:`warmer.model`,
never on aiohttp.  Everything but the runners (executor workers, scheduler
loop) is sans-I/O and takes ``now`` as an argument (DESIGN rule 2).
"""
