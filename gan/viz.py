"""The four picture functions gan/train_loop.py reaches as `viz.<name>`, re-exported while that module is
being changed elsewhere: image grids live in gan.grids, attention figures in gan.attention_maps. Import from
those two; this module goes when train_loop.py imports them directly."""

from gan.attention_maps import attention_figures, save_attention_figure
from gan.grids import make_grid_array, save_image_grid

__all__ = ["attention_figures", "make_grid_array", "save_attention_figure", "save_image_grid"]
