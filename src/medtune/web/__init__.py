"""What `medtune serve` needs besides its routes: the page (index.html) and the batching worker."""
