"""`python -m worker.model` (the worker host starts it): the model worker process."""

from worker.model.main import exit_now, main

exit_now(main())
