"""Stage ``data``: a dataset (RecBole atomic files, Amazon reviews, generated) read, filtered and split
leave-one-out into user histories with item titles and metadata."""
