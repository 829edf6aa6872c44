"""Published results the tables print beside hierpipe's, as data files with their source."""
