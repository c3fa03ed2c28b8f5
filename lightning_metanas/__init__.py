"""lightning_metanas: across-task neural architecture search via meta-learning. The modules
are listed, with what each is for, in the README ("What is in the box")."""
