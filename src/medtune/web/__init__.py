"""What `medtune serve` needs besides its routes: the page (index.html), the batching worker (batching.py)
and how requests are refused (errors.py)."""
