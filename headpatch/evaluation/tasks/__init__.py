"""The evaluation tasks, one module each; headpatch.evaluation.registry lists them."""
