"""The recipes: what `hfmtl train | eval | analyze | cv` run, top to bottom (installed as hfmtl.recipes)."""
