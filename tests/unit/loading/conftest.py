"""Loading tests: quiet transformers (no progress bars), one torch thread (set in tests/conftest)."""

import transformers

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
